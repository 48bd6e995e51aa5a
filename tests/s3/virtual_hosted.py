"""boto3 in virtual-hosted style (BUCKET.DOMAIN) against a redstuff S3
endpoint served with --s3-domain, and path style on the same endpoint.

Run by tests/s3_clients.rs with REDSTUFF_S3_ENDPOINT, REDSTUFF_S3_DOMAIN,
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set. The machine has no DNS
for the domain: names under it are resolved to 127.0.0.1 in this process,
as a wildcard DNS record would.
"""

import os
import socket
import sys
import urllib.parse

import boto3
import botocore
from botocore.config import Config

ENDPOINT = os.environ["REDSTUFF_S3_ENDPOINT"]
DOMAIN = os.environ["REDSTUFF_S3_DOMAIN"]
PORT = urllib.parse.urlparse(ENDPOINT).port

resolve = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and (host == DOMAIN or host.endswith("." + DOMAIN)):
        host = "127.0.0.1"
    return resolve(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo


def client(style, endpoint):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": style}),
    )


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


requests_seen = []
virtual = client("virtual", f"http://{DOMAIN}:{PORT}")
virtual.meta.events.register("before-send.s3", lambda request, **_: requests_seen.append(request.url))
path = client("path", ENDPOINT)

virtual.create_bucket(Bucket="vhost")
virtual.put_object(Bucket="vhost", Key="dir/a b+ü.txt", Body=b"virtual-hosted")
check("requests went to BUCKET.DOMAIN",
      all(urllib.parse.urlparse(u).hostname == f"vhost.{DOMAIN}" for u in requests_seen), requests_seen)
check("a GET in virtual-hosted style returns the bytes",
      virtual.get_object(Bucket="vhost", Key="dir/a b+ü.txt")["Body"].read() == b"virtual-hosted")
check("the same object is there in path style",
      path.get_object(Bucket="vhost", Key="dir/a b+ü.txt")["Body"].read() == b"virtual-hosted")
listed = virtual.list_objects_v2(Bucket="vhost", Prefix="dir/")
check("ListObjectsV2 in virtual-hosted style lists it",
      [o["Key"] for o in listed.get("Contents", [])] == ["dir/a b+ü.txt"], listed)
path.put_object(Bucket="vhost", Key="from-path", Body=b"p")
check("an object written in path style reads in virtual-hosted style",
      virtual.get_object(Bucket="vhost", Key="from-path")["Body"].read() == b"p")
try:
    virtual.get_object(Bucket="nosuchbucket", Key="k")
    check("a missing bucket is NoSuchBucket", False)
except botocore.exceptions.ClientError as e:
    check("a missing bucket is NoSuchBucket", e.response["Error"]["Code"] == "NoSuchBucket", e.response)
virtual.delete_objects(Bucket="vhost", Delete={"Objects": [{"Key": "dir/a b+ü.txt"}, {"Key": "from-path"}]})
virtual.delete_bucket(Bucket="vhost")
check("the bucket is gone", "vhost" not in [b["Name"] for b in path.list_buckets()["Buckets"]])
print("every check passed")
