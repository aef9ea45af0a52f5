"""Example guest in Python: reads orders from S3, totals them, writes the total back to S3
and announces it on SQS, all without a credential: the worker signs each AWS call.

Input: {"bucket": B, "key": K, "queue_url": Q}; the object K holds a JSON list of orders,
each {"order_id": ..., "total_cents": N}. Output: {"orders": n, "total_cents": sum,
"result_key": "totals/K", "message_id": ...}. Build against the `handler-http` world:
    componentize-py -d wit -w handler-http componentize app -p guest/examples/python-aws -p guest/kits/python -o python-aws.wasm
and grant the services in the activity: `[activity.aws] services = ["s3", "sqs"]`.
"""
import json

import sfn_activity
from sfn_activity import AwsError, TaskError


def handle(request, ctx):
    try:
        bucket, key, queue_url = request["bucket"], request["key"], request["queue_url"]
    except (KeyError, TypeError):
        raise TaskError("Totals.InvalidInput", "give bucket, key and queue_url")
    try:
        orders = json.loads(sfn_activity.aws.s3_get(bucket, key))
    except AwsError as err:
        raise TaskError("Totals.InputMissing", f"s3://{bucket}/{key}: {err}")
    total = sum(order["total_cents"] for order in orders)
    result_key = f"totals/{key}"
    summary = {"orders": len(orders), "total_cents": total}
    sfn_activity.aws.s3_put(bucket, result_key, json.dumps(summary), "application/json")
    sent = sfn_activity.aws.call("sqs", "AmazonSQS.SendMessage", {
        "QueueUrl": queue_url,
        "MessageBody": json.dumps({"s3_uri": f"s3://{bucket}/{result_key}", **summary}),
    })
    ctx.log("info", f"{len(orders)} orders, {total} cents, announced as {sent['MessageId']}")
    return {**summary, "result_key": result_key, "message_id": sent["MessageId"]}


WitWorld = sfn_activity.export(handle)
