"""What the controller and the trainer exchange through the bucket, without torch: storage, the
key layout, records, the trial spec, the registries, problems, JSONL reading and seeds."""
