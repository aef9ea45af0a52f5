"""The published Python activity worker (PyPI stepfunctions-activity-worker, pinned in
requirements.txt) running the Python order example's own code natively: the same
`handle` that guest/examples/python-order compiles into a component.

    python python_peer.py --endpoint URL --arn ARN --concurrency 8

Prints "ready" once its client exists, then serves until killed (the library has no stop).
"""
import argparse
import importlib.util
import pathlib
import sys
import types

import boto3
from botocore.config import Config
from stepfunctions_activity_worker import ActivityWorker

REPO = pathlib.Path(__file__).resolve().parents[2]


def load_order_example():
    """guest/examples/python-order/app.py, with a native stand-in for the kit it imports
    (the kit's host calls exist only inside the sandbox)."""
    kit = types.ModuleType("sfn_activity")

    class TaskError(Exception):
        def __init__(self, error, cause=""):
            super().__init__(f"{error}: {cause}")

    kit.TaskError = TaskError
    kit.TaskOver = type("TaskOver", (Exception,), {})
    kit.heartbeat = lambda: None
    kit.export = lambda handle: None
    sys.modules["sfn_activity"] = kit
    spec = importlib.util.spec_from_file_location(
        "app", REPO / "guest/examples/python-order/app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


class Context:
    """What the example's handler uses of its context."""

    def log(self, level, message):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--arn", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    app = load_order_example()
    context = Context()
    client = boto3.client(
        "stepfunctions", endpoint_url=args.endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(read_timeout=70, max_pool_connections=max(10, args.concurrency)))
    worker = ActivityWorker(args.arn, lambda **order: app.handle(order, context),
                            worker_count=args.concurrency, client=client,
                            worker_name="python-peer")
    print("ready", flush=True)
    worker.listen()


if __name__ == "__main__":
    main()
