"""De-aggregates Kinesis records with the standard module (PyPI aws-kinesis-agg).

stdin: one JSON object per line, a record as GetRecords returned it:
  {"shard": ..., "seq": ..., "key": partition key, "data": base64}
stdout: one JSON object per user record, in order:
  {"shard", "seq", "key", "hash" (explicit hash key or null), "data" (base64), "aggregated"}
A record that starts with the KPL magic bytes but is not a valid aggregate (the module
would pass it through as one plain record) is an error: exit 1.
"""
import base64
import json
import sys

from aws_kinesis_agg import MAGIC
from aws_kinesis_agg.deaggregator import iter_deaggregate_records

for line in sys.stdin:
    r = json.loads(line)
    raw = base64.b64decode(r["data"])
    lam = {"kinesis": {"kinesisSchemaVersion": "1.0", "sequenceNumber": r["seq"],
                       "approximateArrivalTimestamp": 0, "partitionKey": r["key"], "data": r["data"]}}
    out = list(iter_deaggregate_records(lam))
    if raw.startswith(MAGIC) and not any(u["kinesis"].get("aggregated") for u in out):
        print(f"record {r['seq']} of {r['shard']} has the KPL magic but is no valid aggregate", file=sys.stderr)
        sys.exit(1)
    for u in out:
        k = u["kinesis"]
        data = k["data"].decode() if isinstance(k["data"], bytes) else k["data"]
        print(json.dumps({"shard": r["shard"], "seq": r["seq"], "key": k["partitionKey"],
                          "hash": k.get("explicitHashKey"), "data": data,
                          "aggregated": bool(k.get("aggregated"))}))
