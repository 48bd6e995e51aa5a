"""A PUT whose body stops arriving, its connection left open, against a
redstuff S3 endpoint served with --client-stall-secs 2.

Run by tests/s3_clients.rs with REDSTUFF_S3_ENDPOINT, AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY set. The request is signed by a presigned URL (its
payload unsigned) and sent on a raw socket, so that the test decides when
the body stops.
"""

import os
import socket
import sys
import urllib.parse

import boto3
import botocore
from botocore.config import Config

ENDPOINT = os.environ["REDSTUFF_S3_ENDPOINT"]
DECLARED = 1_000_000
SENT = 100_000


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


def put_then_stop(url, body, declared):
    """Sends a PUT of `url` declaring `declared` bytes and only `body`; the
    answer the server gives, read until it closes (at most 60 s)."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as conn:
        head = (
            f"PUT {parts.path}?{parts.query} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\n"
            "Connection: close\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        conn.sendall(head.encode() + body)
        answer = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer.decode(errors="replace")


s3 = boto3.client(
    "s3",
    endpoint_url=ENDPOINT,
    region_name="us-east-1",
    config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
)
s3.create_bucket(Bucket="stall")


def presigned_put(key):
    return s3.generate_presigned_url(
        "put_object", Params={"Bucket": "stall", "Key": key}, ExpiresIn=300
    )


answer = put_then_stop(presigned_put("half"), os.urandom(SENT), DECLARED)
check("a body that brings nothing for the stall time is refused with 400",
      answer.startswith("HTTP/1.1 400"), answer[:300])
check("the refusal is S3's RequestTimeout", "<Code>RequestTimeout</Code>" in answer, answer)
try:
    s3.head_object(Bucket="stall", Key="half")
    check("nothing was stored of the stalled PUT", False)
except botocore.exceptions.ClientError as e:
    check("nothing was stored of the stalled PUT",
          e.response["ResponseMetadata"]["HTTPStatusCode"] == 404, str(e))

# A part's body is held to the same bound.
upload = s3.create_multipart_upload(Bucket="stall", Key="parts")["UploadId"]
part_url = s3.generate_presigned_url(
    "upload_part",
    Params={"Bucket": "stall", "Key": "parts", "UploadId": upload, "PartNumber": 1},
    ExpiresIn=300,
)
answer = put_then_stop(part_url, os.urandom(SENT), DECLARED)
check("a part's body that brings nothing is refused with RequestTimeout",
      answer.startswith("HTTP/1.1 400") and "<Code>RequestTimeout</Code>" in answer, answer[:300])
parts = s3.list_parts(Bucket="stall", Key="parts", UploadId=upload).get("Parts", [])
check("the upload has no part of the stalled body", parts == [], str(parts))

# A whole body on the same kind of request is stored.
whole = os.urandom(SENT)
answer = put_then_stop(presigned_put("whole"), whole, len(whole))
check("a whole body is stored", answer.startswith("HTTP/1.1 200"), answer[:300])
got = s3.get_object(Bucket="stall", Key="whole")["Body"].read()
check("and reads back the same", got == whole)

print("every check passed")
