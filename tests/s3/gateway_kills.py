"""The S3 gateway killed (SIGKILL) mid-upload and mid-CompleteMultipartUpload:
afterwards the key is the old object or the new one, byte for byte, never a
mix, and the index opens again.

Run by tests/faults/s3_kills.rs with GATEWAY (a JSON list: the command that
starts `redstuff gateway ... --s3-listen ...`), WORK (a directory for the
payloads it writes: old, a, b) and the S3 keys in AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import boto3
import botocore
from botocore.config import Config

COMMAND = json.loads(os.environ["GATEWAY"])
WORK = os.environ["WORK"]
BUCKET, KEY = "kills", "the key"
rng = random.Random(11)


def start():
    gateway = subprocess.Popen(COMMAND, stdout=subprocess.PIPE, text=True)
    endpoint = None
    for line in gateway.stdout:
        event = json.loads(line)
        if "s3" in event:
            endpoint = event["s3"]
            break
    threading.Thread(target=lambda: gateway.stdout.read(), daemon=True).start()
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60))
    return gateway, client


def kill(gateway):
    gateway.send_signal(signal.SIGKILL)
    gateway.wait()


def payload(name, size):
    data = os.urandom(size)
    with open(os.path.join(WORK, name), "wb") as f:
        f.write(data)
    return data


old, a, b = payload("old", 300_000), payload("a", 5 * 1024 * 1024), payload("b", 70_000)


def read_key(client):
    return client.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()


def check(name, condition):
    if not condition:
        print(f"FAILED: {name}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


gateway, s3 = start()
s3.create_bucket(Bucket=BUCKET)
s3.put_object(Bucket=BUCKET, Key=KEY, Body=old)

# Killed while a part's body streams in.
upload = s3.create_multipart_upload(Bucket=BUCKET, Key=KEY)["UploadId"]
s3.upload_part(Bucket=BUCKET, Key=KEY, UploadId=upload, PartNumber=1, Body=a)


def slow_body():
    for _ in range(50):
        yield b"x" * 65536
        time.sleep(0.02)


def send_slowly():
    try:
        s3.upload_part(Bucket=BUCKET, Key=KEY, UploadId=upload, PartNumber=2, Body=b"".join(slow_body()))
    except Exception:
        pass


sender = threading.Thread(target=send_slowly)
sender.start()
time.sleep(0.3)
kill(gateway)
sender.join()
gateway, s3 = start()
check("after a kill mid-part the key is the old object", read_key(s3) == old)

# Killed during CompleteMultipartUpload, at random moments: each time the
# key is whole, old or new.
states = []
for attempt in range(6):
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=KEY)["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key=KEY, UploadId=upload, PartNumber=1, Body=a)["ETag"]
    e2 = s3.upload_part(Bucket=BUCKET, Key=KEY, UploadId=upload, PartNumber=2, Body=b)["ETag"]
    done = threading.Event()

    def complete():
        try:
            s3.complete_multipart_upload(Bucket=BUCKET, Key=KEY, UploadId=upload, MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
        except Exception:
            pass
        done.set()

    threading.Thread(target=complete).start()
    time.sleep(rng.uniform(0, 0.02))
    kill(gateway)
    done.wait(10)
    gateway, s3 = start()
    now = read_key(s3)
    check(f"after a kill during completion {attempt} the key is old or new, whole",
          now == old or now == a + b)
    states.append("new" if now == a + b else "old")
    if now == old:
        # Put it back to the old object for the next attempt's race.
        pass
print("states:", ",".join(states))
final = "new" if read_key(s3) == a + b else "old"
with open(os.path.join(WORK, "final"), "w") as f:
    f.write(final)
gateway.send_signal(signal.SIGTERM)
gateway.wait(30)
print("every kill left the key whole")
