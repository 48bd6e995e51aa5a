"""boto3 against a redstuff S3 endpoint: every check says what S3 promises.

Run by tests/s3_clients.rs with REDSTUFF_S3_ENDPOINT, AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY set; exits non-zero at the first broken promise.
"""

import concurrent.futures
import hashlib
import os
import sys
import urllib.parse
import urllib.request

import boto3
import botocore
from botocore.config import Config

ENDPOINT = os.environ["REDSTUFF_S3_ENDPOINT"]
BUCKET = "boto3-suite"
KEY = "dir/a key with spaces +&=ü.txt"


def client(secret=None):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )


s3 = client()


def error_code(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("the call succeeded")


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name} {detail}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {name}")


def objects_and_buckets():
    s3.create_bucket(Bucket=BUCKET)
    check("a second CreateBucket of one's own bucket is refused",
          error_code(lambda: s3.create_bucket(Bucket=BUCKET)) == "BucketAlreadyOwnedByYou")
    body = b"hello, redstuff"
    put = s3.put_object(Bucket=BUCKET, Key=KEY, Body=body, ContentType="text/plain",
                        Metadata={"origin": "boto3"})
    check("the ETag of a PUT is the MD5 of its bytes",
          put["ETag"] == '"%s"' % hashlib.md5(body).hexdigest(), put["ETag"])
    got = s3.get_object(Bucket=BUCKET, Key=KEY)
    check("a GET returns the bytes, type and metadata stored",
          got["Body"].read() == body and got["ContentType"] == "text/plain"
          and got["Metadata"] == {"origin": "boto3"}, str(got["Metadata"]))
    head = s3.head_object(Bucket=BUCKET, Key=KEY)
    check("HEAD gives length and ETag", head["ContentLength"] == len(body) and head["ETag"] == put["ETag"])
    check("a missing key is NoSuchKey", error_code(lambda: s3.get_object(Bucket=BUCKET, Key="nope")) == "NoSuchKey")
    check("a missing bucket is NoSuchBucket",
          error_code(lambda: s3.get_object(Bucket="no-such-bucket", Key="k")) == "NoSuchBucket")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    check("ListBuckets lists the bucket", BUCKET in names, str(names))
    check("GetBucketLocation answers", "LocationConstraint" in s3.get_bucket_location(Bucket=BUCKET))
    check("versioning was never enabled", "Status" not in s3.get_bucket_versioning(Bucket=BUCKET))


def ranges_and_conditions():
    data = bytes(range(256)) * 40
    etag = s3.put_object(Bucket=BUCKET, Key="ranged", Body=data)["ETag"]
    part = s3.get_object(Bucket=BUCKET, Key="ranged", Range="bytes=5-9")
    check("a ranged GET returns those bytes with Content-Range",
          part["Body"].read() == data[5:10] and part["ContentRange"] == f"bytes 5-9/{len(data)}")
    tail = s3.get_object(Bucket=BUCKET, Key="ranged", Range="bytes=-7")["Body"].read()
    check("a suffix range returns the last bytes", tail == data[-7:])
    check("a range past the end is InvalidRange",
          error_code(lambda: s3.get_object(Bucket=BUCKET, Key="ranged", Range="bytes=999999-")) == "InvalidRange")
    check("If-None-Match with the ETag is 304",
          error_code(lambda: s3.get_object(Bucket=BUCKET, Key="ranged", IfNoneMatch=etag)) == "304")
    check("If-Match with another ETag is PreconditionFailed",
          error_code(lambda: s3.get_object(Bucket=BUCKET, Key="ranged", IfMatch='"0000"')) == "PreconditionFailed")
    check("If-Match with the ETag serves",
          s3.get_object(Bucket=BUCKET, Key="ranged", IfMatch=etag)["Body"].read() == data)
    check("a conditional write If-None-Match: * on an existing key is PreconditionFailed",
          error_code(lambda: s3.put_object(Bucket=BUCKET, Key="ranged", Body=b"x", IfNoneMatch="*"))
          == "PreconditionFailed")
    s3.put_object(Bucket=BUCKET, Key="fresh", Body=b"x", IfNoneMatch="*")
    # botocore holds the body back (Expect: 100-continue) and reuses the
    # connection after a refusal: the next request must not be spoiled.
    for i in range(40):
        error_code(lambda: s3.put_object(Bucket=BUCKET, Key="ranged", Body=b"x", IfNoneMatch="*"))
        s3.put_object(Bucket=BUCKET, Key=f"after-refusal-{i}", Body=b"y", IfNoneMatch="*")
    check("a request after a refused write with a held-back body is served", True)
    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": f"after-refusal-{i}"} for i in range(40)]})
    check("the refused write changed nothing",
          s3.get_object(Bucket=BUCKET, Key="ranged")["Body"].read() == data)


def checksums_and_credentials():
    check("a wrong CRC32 stores nothing",
          error_code(lambda: s3.put_object(Bucket=BUCKET, Key="bad-crc", Body=b"abc", ChecksumCRC32="AAAAAA=="))
          == "BadDigest")
    check("a wrong Content-MD5 stores nothing",
          error_code(lambda: s3.put_object(Bucket=BUCKET, Key="bad-md5", Body=b"abc",
                                           ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg=="))
          == "BadDigest")
    for key in ["bad-crc", "bad-md5"]:
        check(f"{key} does not exist", error_code(lambda: s3.head_object(Bucket=BUCKET, Key=key)) == "404")
    good = s3.put_object(Bucket=BUCKET, Key="crc", Body=b"abc", ChecksumAlgorithm="SHA256")
    check("a right SHA-256 is echoed", good.get("ChecksumSHA256") is not None, str(good))
    check("a wrong secret is refused",
          error_code(lambda: client("wrong-secret").list_buckets()) == "SignatureDoesNotMatch")
    check("an operation not implemented says so, never a wrong success",
          error_code(lambda: s3.put_bucket_policy(Bucket=BUCKET, Policy="{}")) == "NotImplemented")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "crc"}, ExpiresIn=60)
    check("a presigned URL reads without credentials", urllib.request.urlopen(url).read() == b"abc")


def trailers():
    """botocore sends checksums in aws-chunked trailers only over TLS; on a
    plain HTTP endpoint the checksum is moved to the trailer by hand,
    exactly where botocore itself puts it over TLS (checked when the
    endpoint is https)."""
    import botocore.httpchecksum as httpchecksum

    if ENDPOINT.startswith("https://"):
        sent = {}
        plain = client()
        plain.meta.events.register("before-send.s3.PutObject",
                                   lambda request, **_: sent.update(request.headers))
        body = os.urandom(200_000)
        plain.put_object(Bucket=BUCKET, Key="https-default", Body=body)
        check("over TLS botocore itself sends an unsigned aws-chunked body with a trailing checksum",
              sent.get("X-Amz-Content-SHA256") == b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"
              and b"aws-chunked" in sent.get("Content-Encoding", b"")
              and sent.get("X-Amz-Trailer", b"").startswith(b"x-amz-checksum-"), sent)
        check("and the object reads back whole",
              s3.get_object(Bucket=BUCKET, Key="https-default")["Body"].read() == body)

    def to_trailer(params, **_):
        algorithm = params.get("context", {}).get("checksum", {}).get("request_algorithm")
        if algorithm:
            algorithm["in"] = "trailer"

    trailing = client()
    trailing.meta.events.register("before-call.s3.PutObject", to_trailer)
    sent = {}
    trailing.meta.events.register("before-send.s3.PutObject",
                                  lambda request, **_: sent.update(request.headers))
    body = os.urandom(300_000)
    trailing.put_object(Bucket=BUCKET, Key="trailer", Body=body, ChecksumAlgorithm="CRC32")
    check("the checksum went in an aws-chunked trailer",
          b"aws-chunked" in sent.get("Content-Encoding", b"")
          and sent.get("X-Amz-Trailer") == b"x-amz-checksum-crc32", sent)
    check("an object with a trailing checksum reads back whole",
          s3.get_object(Bucket=BUCKET, Key="trailer")["Body"].read() == body)
    wrong = httpchecksum._CHECKSUM_CLS["crc32"]

    class WrongCrc32(wrong):
        def b64digest(self):
            return "AAAAAA=="

    httpchecksum._CHECKSUM_CLS["crc32"] = WrongCrc32
    try:
        code = error_code(lambda: trailing.put_object(Bucket=BUCKET, Key="bad-trailer", Body=body,
                                                      ChecksumAlgorithm="CRC32"))
    finally:
        httpchecksum._CHECKSUM_CLS["crc32"] = wrong
    check("a wrong checksum in the trailer is BadDigest", code == "BadDigest", code)
    check("and stores nothing",
          error_code(lambda: s3.head_object(Bucket=BUCKET, Key="bad-trailer")) == "404")


def multipart():
    part1 = os.urandom(5 * 1024 * 1024)
    part2 = os.urandom(1000)
    aborted = s3.create_multipart_upload(Bucket=BUCKET, Key="mp")["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key="mp", UploadId=aborted, PartNumber=1, Body=part2)
    s3.abort_multipart_upload(Bucket=BUCKET, Key="mp", UploadId=aborted)
    check("an aborted upload is gone",
          error_code(lambda: s3.list_parts(Bucket=BUCKET, Key="mp", UploadId=aborted)) == "NoSuchUpload")
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="mp", ContentType="video/mp4")["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    check("the upload in progress is listed", [u["UploadId"] for u in listed] == [upload], str(listed))
    e1 = s3.upload_part(Bucket=BUCKET, Key="mp", UploadId=upload, PartNumber=1, Body=part1)["ETag"]
    e2 = s3.upload_part(Bucket=BUCKET, Key="mp", UploadId=upload, PartNumber=2, Body=part2)["ETag"]
    parts = s3.list_parts(Bucket=BUCKET, Key="mp", UploadId=upload)["Parts"]
    check("ListParts lists both parts", [p["PartNumber"] for p in parts] == [1, 2])
    check("parts out of order are InvalidPartOrder",
          error_code(lambda: s3.complete_multipart_upload(
              Bucket=BUCKET, Key="mp", UploadId=upload,
              MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]}))
          == "InvalidPartOrder")
    done = s3.complete_multipart_upload(
        Bucket=BUCKET, Key="mp", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    digest = hashlib.md5(bytes.fromhex(e1.strip('"')) + bytes.fromhex(e2.strip('"'))).hexdigest()
    check("the multipart ETag is the MD5 of the part MD5s and -2", done["ETag"] == f'"{digest}-2"', done["ETag"])
    whole = s3.get_object(Bucket=BUCKET, Key="mp")
    check("the object is the parts in order", whole["Body"].read() == part1 + part2)
    check("it keeps the upload's content type", whole["ContentType"] == "video/mp4")
    across = s3.get_object(Bucket=BUCKET, Key="mp", Range=f"bytes={len(part1) - 3}-{len(part1) + 2}")
    check("a range across the parts' boundary", across["Body"].read() == (part1 + part2)[len(part1) - 3:len(part1) + 3])
    s3.copy_object(Bucket=BUCKET, Key="mp-copy", CopySource={"Bucket": BUCKET, "Key": "mp"})
    copy = s3.head_object(Bucket=BUCKET, Key="mp-copy")
    check("a copy has the source's ETag and length",
          copy["ETag"] == done["ETag"] and copy["ContentLength"] == len(part1) + len(part2))
    # UploadPartCopy of a whole one-blob object, then of a range.
    s3.put_object(Bucket=BUCKET, Key="src", Body=part1)
    upc = s3.create_multipart_upload(Bucket=BUCKET, Key="upc")["UploadId"]
    c1 = s3.upload_part_copy(Bucket=BUCKET, Key="upc", UploadId=upc, PartNumber=1,
                             CopySource={"Bucket": BUCKET, "Key": "src"})["CopyPartResult"]["ETag"]
    c2 = s3.upload_part_copy(Bucket=BUCKET, Key="upc", UploadId=upc, PartNumber=2,
                             CopySource={"Bucket": BUCKET, "Key": "src"},
                             CopySourceRange="bytes=0-99")["CopyPartResult"]["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="upc", UploadId=upc, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": c1}, {"PartNumber": 2, "ETag": c2}]})
    check("UploadPartCopy assembles copied parts",
          s3.get_object(Bucket=BUCKET, Key="upc")["Body"].read() == part1 + part1[:100])


def listings():
    s3.create_bucket(Bucket="listing")
    s3.put_object(Bucket="listing", Key="seed", Body=b"s")
    keys = [f"p{i % 5}/k {i:05d}+&=ü" for i in range(2500)]

    def copy(key):
        s3.copy_object(Bucket="listing", Key=key, CopySource={"Bucket": "listing", "Key": "seed"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(copy, keys))
    paginator = s3.get_paginator("list_objects_v2")
    seen, prefixes = [], []
    for page in paginator.paginate(Bucket="listing", PaginationConfig={"PageSize": 333}):
        seen += [o["Key"] for o in page.get("Contents", [])]
    check("ListObjectsV2 pages over 2,501 keys, each once, in order",
          seen == sorted(keys + ["seed"]), f"{len(seen)} keys")
    for page in paginator.paginate(Bucket="listing", Delimiter="/", PaginationConfig={"PageSize": 2}):
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        seen = [o["Key"] for o in page.get("Contents", [])]
    check("a delimiter rolls keys up into common prefixes",
          prefixes == [f"p{i}/" for i in range(5)], str(prefixes))
    under = []
    for page in paginator.paginate(Bucket="listing", Prefix="p3/", PaginationConfig={"PageSize": 100}):
        under += [o["Key"] for o in page.get("Contents", [])]
    check("a prefix lists its 500 keys", len(under) == 500 and len(set(under)) == 500)
    v1 = []
    for page in s3.get_paginator("list_objects").paginate(Bucket="listing", Prefix="p1/",
                                                          PaginationConfig={"PageSize": 150}):
        v1 += [o["Key"] for o in page.get("Contents", [])]
    check("ListObjects V1 pages with markers", v1 == sorted(k for k in keys if k.startswith("p1/")))
    encoded = s3.list_objects_v2(Bucket="listing", Prefix="p2/", MaxKeys=1, EncodingType="url")
    first = sorted(k for k in keys if k.startswith("p2/"))[0]
    check("encoding-type=url sends keys percent-encoded",
          encoded["Contents"][0]["Key"] == urllib.parse.quote(first, safe="/~")
          and urllib.parse.unquote(encoded["Contents"][0]["Key"]) == first, encoded["Contents"][0]["Key"])
    for lister in (s3.list_objects, s3.list_objects_v2):
        none = lister(Bucket="listing", MaxKeys=0)
        check("MaxKeys=0 lists nothing and is not truncated (%s)" % lister.__name__,
              none["IsTruncated"] is False and not none.get("Contents"), none)
    check("a bucket with keys cannot be deleted",
          error_code(lambda: s3.delete_bucket(Bucket="listing")) == "BucketNotEmpty")
    deleted = s3.delete_objects(Bucket="listing", Delete={"Objects": [{"Key": k} for k in keys[:1000]]})
    check("DeleteObjects deletes each key", len(deleted.get("Deleted", [])) == 1000)
    left = s3.list_objects_v2(Bucket="listing", Prefix="p0/")["KeyCount"]
    check("the deleted keys are gone", left == 300, str(left))


def headers_tags_and_acls():
    from datetime import datetime, timezone
    expires = datetime(2031, 5, 4, 3, 2, 1, tzinfo=timezone.utc)
    s3.put_object(Bucket=BUCKET, Key="served", Body=b"gzipped bytes", ContentEncoding="gzip",
                  CacheControl="max-age=60", ContentDisposition='attachment; filename="a.gz"',
                  ContentLanguage="en", Expires=expires, Tagging="project=red%20stuff&team=storage")
    for name, got in [("GET", s3.get_object(Bucket=BUCKET, Key="served")),
                      ("HEAD", s3.head_object(Bucket=BUCKET, Key="served"))]:
        check(f"{name} answers the headers the PUT sent",
              got["ContentEncoding"] == "gzip" and got["CacheControl"] == "max-age=60"
              and got["ContentDisposition"] == 'attachment; filename="a.gz"'
              and got["ContentLanguage"] == "en" and got["Expires"] == expires, str(got))
    check("a GET says how many tags the object has",
          s3.get_object(Bucket=BUCKET, Key="served")["TagCount"] == 2)
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=BUCKET, Key="served")["TagSet"]}
    check("the tags of the PUT are the object's", tags == {"project": "red stuff", "team": "storage"}, str(tags))
    etag = s3.head_object(Bucket=BUCKET, Key="served")["ETag"]
    s3.put_object_tagging(Bucket=BUCKET, Key="served", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
    check("PutObjectTagging replaces the tags",
          s3.get_object_tagging(Bucket=BUCKET, Key="served")["TagSet"] == [{"Key": "only", "Value": "one"}])
    check("and changes nothing else of the object", s3.head_object(Bucket=BUCKET, Key="served")["ETag"] == etag)
    check("eleven tags are InvalidTag",
          error_code(lambda: s3.put_object_tagging(Bucket=BUCKET, Key="served", Tagging={
              "TagSet": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]})) == "InvalidTag")
    check("a refused tagging changed nothing",
          s3.get_object_tagging(Bucket=BUCKET, Key="served")["TagSet"] == [{"Key": "only", "Value": "one"}])
    s3.copy_object(Bucket=BUCKET, Key="served-copy", CopySource={"Bucket": BUCKET, "Key": "served"})
    check("a copy keeps the source's tags and headers",
          s3.get_object_tagging(Bucket=BUCKET, Key="served-copy")["TagSet"] == [{"Key": "only", "Value": "one"}]
          and s3.head_object(Bucket=BUCKET, Key="served-copy")["ContentEncoding"] == "gzip")
    s3.copy_object(Bucket=BUCKET, Key="served-copy", CopySource={"Bucket": BUCKET, "Key": "served"},
                   MetadataDirective="REPLACE", ContentType="text/plain", TaggingDirective="REPLACE",
                   Tagging="fresh=yes")
    head = s3.head_object(Bucket=BUCKET, Key="served-copy")
    check("a copy with REPLACE takes the request's headers and tags",
          "ContentEncoding" not in head and head["ContentType"] == "text/plain"
          and s3.get_object_tagging(Bucket=BUCKET, Key="served-copy")["TagSet"]
          == [{"Key": "fresh", "Value": "yes"}], str(head))
    s3.delete_object_tagging(Bucket=BUCKET, Key="served")
    check("DeleteObjectTagging removes them", s3.get_object_tagging(Bucket=BUCKET, Key="served")["TagSet"] == [])
    check("tags of a missing key are NoSuchKey",
          error_code(lambda: s3.get_object_tagging(Bucket=BUCKET, Key="nope")) == "NoSuchKey")
    acl = s3.get_object_acl(Bucket=BUCKET, Key="served")
    check("an object's ACL is its owner's full control",
          [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"], str(acl))
    check("so is a bucket's",
          [g["Permission"] for g in s3.get_bucket_acl(Bucket=BUCKET)["Grants"]] == ["FULL_CONTROL"])
    for name, extra in [("SSE-S3", {"ServerSideEncryption": "AES256"}),
                        ("SSE-KMS", {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k"})]:
        check(f"{name} is refused, never pretended",
              error_code(lambda: s3.put_object(Bucket=BUCKET, Key="encrypted", Body=b"x", **extra))
              == "NotImplemented")
    check("and stores nothing", error_code(lambda: s3.head_object(Bucket=BUCKET, Key="encrypted")) == "404")


def parts_versions_and_edges():
    part1 = os.urandom(5 * 1024 * 1024)
    part2 = os.urandom(1234)
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="by-parts")["UploadId"]
    e1 = s3.upload_part(Bucket=BUCKET, Key="by-parts", UploadId=upload, PartNumber=1, Body=part1)["ETag"]
    e2 = s3.upload_part(Bucket=BUCKET, Key="by-parts", UploadId=upload, PartNumber=2, Body=part2)["ETag"]
    s3.complete_multipart_upload(Bucket=BUCKET, Key="by-parts", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    second = s3.get_object(Bucket=BUCKET, Key="by-parts", PartNumber=2)
    check("GET partNumber=2 answers the second part's bytes",
          second["Body"].read() == part2 and second["PartsCount"] == 2
          and second["ContentRange"] == f"bytes {len(part1)}-{len(part1) + len(part2) - 1}/{len(part1) + len(part2)}",
          str({k: v for k, v in second.items() if k != "Body"}))
    head = s3.head_object(Bucket=BUCKET, Key="by-parts", PartNumber=1)
    check("HEAD partNumber=1 gives the first part's length and the part count",
          head["ContentLength"] == len(part1) and head["PartsCount"] == 2, str(head))
    check("a part beyond the last is InvalidPartNumber",
          error_code(lambda: s3.get_object(Bucket=BUCKET, Key="by-parts", PartNumber=3)) == "InvalidPartNumber")
    s3.put_object(Bucket=BUCKET, Key="empty", Body=b"")
    check("an empty object has no range to serve",
          error_code(lambda: s3.get_object(Bucket=BUCKET, Key="empty", Range="bytes=-5")) == "InvalidRange")
    check("and reads whole as nothing", s3.get_object(Bucket=BUCKET, Key="empty")["Body"].read() == b"")
    check("a version other than null is NoSuchVersion",
          error_code(lambda: s3.get_object(Bucket=BUCKET, Key="empty", VersionId="abc")) == "NoSuchVersion")
    deleted = s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": "empty", "VersionId": "abc"}]})
    check("DeleteObjects refuses a version other than null for that key",
          [e["Code"] for e in deleted.get("Errors", [])] == ["NoSuchVersion"], str(deleted))
    check("and keeps the object", s3.head_object(Bucket=BUCKET, Key="empty")["ContentLength"] == 0)
    check("DeleteObjects in a missing bucket is NoSuchBucket",
          error_code(lambda: s3.delete_objects(Bucket="no-such-bucket",
                                               Delete={"Objects": [{"Key": "k"}]})) == "NoSuchBucket")
    etag = s3.head_object(Bucket=BUCKET, Key="empty")["ETag"]
    check("a conditional delete with another ETag is PreconditionFailed",
          error_code(lambda: s3.delete_object(Bucket=BUCKET, Key="empty", IfMatch='"0000"'))
          == "PreconditionFailed")
    s3.delete_object(Bucket=BUCKET, Key="empty", IfMatch=etag)
    check("one with the ETag deletes", error_code(lambda: s3.head_object(Bucket=BUCKET, Key="empty")) == "404")
    upc = s3.create_multipart_upload(Bucket=BUCKET, Key="upc-cond")["UploadId"]
    check("UploadPartCopy with a source ETag that no longer holds is PreconditionFailed",
          error_code(lambda: s3.upload_part_copy(Bucket=BUCKET, Key="upc-cond", UploadId=upc, PartNumber=1,
                                                 CopySource={"Bucket": BUCKET, "Key": "by-parts"},
                                                 CopySourceIfMatch='"0000"')) == "PreconditionFailed")
    check("and a range past the source's end is refused",
          error_code(lambda: s3.upload_part_copy(Bucket=BUCKET, Key="upc-cond", UploadId=upc, PartNumber=1,
                                                 CopySource={"Bucket": BUCKET, "Key": "by-parts"},
                                                 CopySourceRange="bytes=0-99999999")) == "InvalidArgument")
    check("neither made a part", s3.list_parts(Bucket=BUCKET, Key="upc-cond", UploadId=upc).get("Parts", []) == [])
    s3.abort_multipart_upload(Bucket=BUCKET, Key="upc-cond", UploadId=upc)
    s3.create_bucket(Bucket="versions")
    odd = ["a+b", "a b", "a%2Bb", "c"]
    for key in odd:
        s3.put_object(Bucket="versions", Key=key, Body=b"v")
    listed = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket="versions",
                                                                 PaginationConfig={"PageSize": 1}):
        listed += [v["Key"] for v in page.get("Versions", [])]
    check("ListObjectVersions pages over keys with + and % once each, in order",
          listed == sorted(odd), str(listed))
    s3.delete_objects(Bucket="versions", Delete={"Objects": [{"Key": k} for k in odd]})
    s3.delete_bucket(Bucket="versions")


objects_and_buckets()
ranges_and_conditions()
checksums_and_credentials()
trailers()
multipart()
headers_tags_and_acls()
parts_versions_and_edges()
listings()
print("boto3 suite: every check passed")
