#!/usr/bin/env bash
# Least privilege on GCS: a service account that may read, write and list only under the root's
# prefix, for the controller and the trials (the GCS counterpart of infra/aws-iam-policy.json).
#
#   infra/gcs-iam.sh PROJECT gs://my-bucket/automl [SERVICE_ACCOUNT_NAME]
#
# It creates (or updates) a custom role with the object permissions gcsfs uses, a service account,
# and one bucket-level binding whose IAM condition limits it to the prefix: object names for reads
# and writes, and the list prefix (storage.googleapis.com/objectListPrefix) for listings. Give the
# service account to the machines (SkyPilot: `gcp: remote_identity: SA_EMAIL` in
# ~/.sky/config.yaml); no key file is created, so none can leak.
set -euo pipefail

[ $# -ge 2 ] && [ $# -le 3 ] || { echo "usage: $0 PROJECT gs://BUCKET/PREFIX [SERVICE_ACCOUNT_NAME]" >&2; exit 2; }
project=$1
rest=${2#gs://}
[ "$rest" != "$2" ] || { echo "the root must be a gs:// URL" >&2; exit 2; }
bucket=${rest%%/*}
prefix=${rest#"$bucket"}
prefix=${prefix#/}
prefix=${prefix%/}
[ -n "$prefix" ] || { echo "give the root's prefix (gs://BUCKET/PREFIX): the grant is limited to it" >&2; exit 2; }
account=${3:-automl-images}
email="$account@$project.iam.gserviceaccount.com"
role=automlImagesRoot
# Overwriting an object needs delete as well as create on GCS; `list` is checked on the bucket,
# hence the list-prefix attribute in the condition.
permissions=storage.objects.get,storage.objects.create,storage.objects.delete,storage.objects.list

if gcloud iam roles describe "$role" --project "$project" >/dev/null 2>&1; then
  gcloud iam roles update "$role" --project "$project" --permissions "$permissions" --quiet >/dev/null
else
  gcloud iam roles create "$role" --project "$project" --title "automl-images root" \
    --description "Objects under one automl-images root (with a prefix condition)" \
    --permissions "$permissions" --stage GA >/dev/null
fi
gcloud iam service-accounts describe "$email" --project "$project" >/dev/null 2>&1 ||
  gcloud iam service-accounts create "$account" --project "$project" --display-name "automl-images"

condition="resource.name.startsWith(\"projects/_/buckets/$bucket/objects/$prefix/\")"
condition+=" || api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"$prefix/\")"
gcloud storage buckets add-iam-policy-binding "gs://$bucket" \
  --member "serviceAccount:$email" --role "projects/$project/roles/$role" \
  --condition "expression=$condition,title=automl-images-$prefix,description=only under gs://$bucket/$prefix/"
echo "$email may use gs://$bucket/$prefix/ and nothing else"
