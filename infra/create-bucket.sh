#!/usr/bin/env bash
# Create the bucket that holds an automl-images root, private, with lifecycle rules for what
# preempted and finished trials leave behind.
#
#   infra/create-bucket.sh s3://my-bucket/automl [us-east-1]     # aws s3api (AWS CLI v2)
#   infra/create-bucket.sh gs://my-bucket/automl [us-central1]   # gcloud storage
#
# CHECKPOINT_DAYS (default 30): on GCS, a trial's checkpoints/last.pt is deleted that many days after
# it was last written (a running trial rewrites it every epoch; jobs time out after timeout_hours,
# at most days). S3 lifecycle filters match key prefixes only, not the `.../checkpoints/` part in
# the middle of a key, so on S3 the rules below clear incomplete multipart uploads (a checkpoint
# upload cut by a preemption, billed until aborted) and old versions of overwritten objects (when
# versioning is on); delete the checkpoints of finished jobs with
#   aws s3 rm --recursive s3://my-bucket/automl/jobs/JOB_ID/trials/ --exclude '*' --include '*/checkpoints/*'
# An existing bucket is kept as it is; its lifecycle rules are replaced by these.
set -euo pipefail

usage() { echo "usage: $0 s3://BUCKET/PREFIX|gs://BUCKET/PREFIX [REGION]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
url=$1
region=${2:-}
scheme=${url%%://*}
rest=${url#*://}
bucket=${rest%%/*}
prefix=${rest#"$bucket"}
prefix=${prefix#/}
prefix=${prefix%/}
[ -n "$bucket" ] && [ "$rest" != "$url" ] || usage
days=${CHECKPOINT_DAYS:-30}
case $days in ''|*[!0-9]*) echo "CHECKPOINT_DAYS must be a whole number of days" >&2; exit 2;; esac
under=${prefix:+$prefix/}    # key prefix of the root: "automl/" (or "" for a whole bucket)

rules=$(mktemp)
trap 'rm -f "$rules"' EXIT

case $scheme in
s3)
  region=${region:-${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}}
  if aws s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
    echo "s3://$bucket exists: keeping it"
  elif [ "$region" = us-east-1 ]; then
    aws s3api create-bucket --bucket "$bucket" --region "$region" >/dev/null
  else
    aws s3api create-bucket --bucket "$bucket" --region "$region" \
      --create-bucket-configuration "LocationConstraint=$region" >/dev/null
  fi
  aws s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
    BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
  cat > "$rules" <<EOF
{
  "Rules": [
    {
      "ID": "automl-images-abort-cut-uploads",
      "Status": "Enabled",
      "Filter": {"Prefix": "${under}"},
      "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 2}
    },
    {
      "ID": "automl-images-old-versions",
      "Status": "Enabled",
      "Filter": {"Prefix": "${under}jobs/"},
      "NoncurrentVersionExpiration": {"NoncurrentDays": 7}
    }
  ]
}
EOF
  aws s3api put-bucket-lifecycle-configuration --bucket "$bucket" --lifecycle-configuration "file://$rules"
  ;;
gs)
  if gcloud storage buckets describe "gs://$bucket" >/dev/null 2>&1; then
    echo "gs://$bucket exists: keeping it"
  else
    gcloud storage buckets create "gs://$bucket" ${region:+--location="$region"} \
      --uniform-bucket-level-access --public-access-prevention
  fi
  cat > "$rules" <<EOF
{
  "rule": [
    {
      "action": {"type": "Delete"},
      "condition": {"age": ${days}, "matchesPrefix": ["${under}jobs/"], "matchesSuffix": ["/checkpoints/last.pt"]}
    },
    {
      "action": {"type": "AbortIncompleteMultipartUpload"},
      "condition": {"age": 2}
    },
    {
      "action": {"type": "Delete"},
      "condition": {"daysSinceNoncurrentTime": 7, "matchesPrefix": ["${under}jobs/"]}
    }
  ]
}
EOF
  gcloud storage buckets update "gs://$bucket" --lifecycle-file="$rules"
  ;;
*)
  usage
  ;;
esac
echo "$scheme://$bucket ready for the root $url (lifecycle rules set)"
