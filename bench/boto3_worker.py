"""A typical Python activity worker: boto3 + ThreadPoolExecutor, the same order contract.

Used by the benchmark against the same Step Functions fake as sfn-wasm-worker:
    python boto3_worker.py --endpoint URL --arn ARN --concurrency 8 --tasks 1000
Prints "ready" once its client exists, then exits after handling --tasks tasks.
"""
import argparse
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config


def price(order):
    items = order["items"]
    subtotal = sum(line["quantity"] * line["unit_price_cents"] for line in items)
    discount = subtotal * order.get("discount_percent", 0) // 100
    return {"order_id": order["order_id"], "lines": len(items),
            "item_count": sum(line["quantity"] for line in items), "subtotal_cents": subtotal,
            "discount_cents": discount, "total_cents": subtotal - discount, "status": "accepted"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--arn", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--tasks", type=int, required=True)
    args = parser.parse_args()
    client = boto3.client(
        "stepfunctions", endpoint_url=args.endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(read_timeout=65, max_pool_connections=args.concurrency, retries={"mode": "standard"}))
    done = 0
    lock = threading.Lock()

    def poll_loop():
        nonlocal done
        while True:
            with lock:
                if done >= args.tasks:
                    return
            task = client.get_activity_task(activityArn=args.arn, workerName="boto3")
            token = task.get("taskToken")
            if not token:
                continue
            try:
                output = json.dumps(price(json.loads(task["input"])))
                client.send_task_success(taskToken=token, output=output)
            except (KeyError, TypeError, ValueError) as err:
                client.send_task_failure(taskToken=token, error="Order.Invalid", cause=str(err))
            with lock:
                done += 1

    print("ready", flush=True)
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        for future in [pool.submit(poll_loop) for _ in range(args.concurrency)]:
            future.result()


if __name__ == "__main__":
    main()
