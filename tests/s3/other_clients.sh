#!/usr/bin/env bash
# rclone, s3cmd, s5cmd and s3fs against a redstuff S3 endpoint.
# Run by tests/s3_clients.rs in a scratch directory with
# REDSTUFF_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set and
# the clients on PATH (scripts/s3-clients installs them). Stops at the
# first failure.
set -euo pipefail
EP="$REDSTUFF_S3_ENDPOINT"
HOSTPORT="${EP#http://}"
say() { echo "ok: $*"; }

mkdir -p tree/sub
head -c 3000000 /dev/urandom > tree/big
echo "small file" > "tree/sub/name with spaces +&=ü"
echo "another" > tree/sub/plain

# rclone: copy, sync, check (S3 provider Other, path style). rclone 1.60
# cannot use a custom CA bundle on plain HTTP: drop the machine's.
unset AWS_CA_BUNDLE
export RCLONE_CONFIG_RS_TYPE=s3 RCLONE_CONFIG_RS_PROVIDER=Other \
  RCLONE_CONFIG_RS_ENDPOINT="$EP" RCLONE_CONFIG_RS_REGION=us-east-1 \
  RCLONE_CONFIG_RS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  RCLONE_CONFIG_RS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
  RCLONE_CONFIG_RS_FORCE_PATH_STYLE=true
rclone mkdir rs:rclone-bucket
rclone copy tree rs:rclone-bucket/tree
rclone check tree rs:rclone-bucket/tree
say "rclone copy and check"
echo "changed" > tree/sub/plain
rm "tree/sub/name with spaces +&=ü"
rclone sync tree rs:rclone-bucket/tree
rclone check tree rs:rclone-bucket/tree
test "$(rclone cat rs:rclone-bucket/tree/sub/plain)" = "changed"
! rclone lsf -R rs:rclone-bucket/tree | grep -q "name with spaces"
say "rclone sync (a change and a removal) and check"

# s3cmd: put, get, ls (ListObjects V1).
cat > s3cmd.cfg <<CFG
[default]
access_key = $AWS_ACCESS_KEY_ID
secret_key = $AWS_SECRET_ACCESS_KEY
host_base = $HOSTPORT
host_bucket = $HOSTPORT
use_https = False
signature_v2 = False
bucket_location = us-east-1
CFG
s3cmd -c s3cmd.cfg mb s3://s3cmd-bucket
s3cmd -c s3cmd.cfg put tree/big "s3://s3cmd-bucket/dir/big file"
s3cmd -c s3cmd.cfg get "s3://s3cmd-bucket/dir/big file" big.s3cmd
cmp tree/big big.s3cmd
s3cmd -c s3cmd.cfg ls s3://s3cmd-bucket/ | grep -q "DIR.*s3://s3cmd-bucket/dir/"
s3cmd -c s3cmd.cfg ls s3://s3cmd-bucket/dir/ | grep -q "3000000.*big file"
say "s3cmd put, get and ls"

# s5cmd: cp up and down, ls, cat.
s5cmd --endpoint-url "$EP" mb s3://s5cmd-bucket
s5cmd --endpoint-url "$EP" cp tree/big s3://s5cmd-bucket/big
s5cmd --endpoint-url "$EP" cp s3://s5cmd-bucket/big big.s5cmd
cmp tree/big big.s5cmd
s5cmd --endpoint-url "$EP" ls s3://s5cmd-bucket/ | grep -Eq "3000000 +big$"
test "$(s5cmd --endpoint-url "$EP" cat s3://s5cmd-bucket/big | md5sum)" = "$(md5sum < tree/big)"
say "s5cmd cp, ls and cat"

# s3fs (fsspec): ls, and reads at random offsets.
python - <<'PY'
import os, random
import s3fs
fs = s3fs.S3FileSystem(
    key=os.environ["AWS_ACCESS_KEY_ID"], secret=os.environ["AWS_SECRET_ACCESS_KEY"],
    client_kwargs={"endpoint_url": os.environ["REDSTUFF_S3_ENDPOINT"], "region_name": "us-east-1"},
)
listed = fs.ls("s5cmd-bucket")
assert listed == ["s5cmd-bucket/big"], listed
data = open("tree/big", "rb").read()
rng = random.Random(7)
with fs.open("s5cmd-bucket/big", "rb", block_size=256 * 1024) as f:
    for _ in range(20):
        offset = rng.randrange(len(data))
        length = rng.randrange(1, 100_000)
        f.seek(offset)
        got = f.read(length)
        assert got == data[offset:offset + length], (offset, length)
print("ok: s3fs ls and 20 reads at random offsets")
PY
echo "every client passed"
