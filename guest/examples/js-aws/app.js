// Example guest in JavaScript: reads orders from S3, totals them, writes the total back to
// S3 and announces it on SQS, all without a credential: the worker signs each AWS call.
//
// Input: {"bucket": B, "key": K, "queue_url": Q}; the object K holds a JSON list of orders,
// each {"order_id": ..., "total_cents": N}. Output: {"orders": n, "total_cents": sum,
// "result_key": "totals/K", "message_id": ...}. Bundle, then build against the
// `handler-http` world (as js-fetch), and grant `[activity.aws] services = ["s3", "sqs"]`.
import { aws, AwsError, handler, TaskError } from "../../kits/js/sfn-activity.js";

export const handle = handler(async (request, ctx) => {
  const { bucket, key, queue_url: queueUrl } = request ?? {};
  if (!bucket || !key || !queueUrl) {
    throw new TaskError("Totals.InvalidInput", "give bucket, key and queue_url");
  }
  let orders;
  try {
    orders = JSON.parse(new TextDecoder().decode(await aws.s3Get(bucket, key)));
  } catch (err) {
    if (err instanceof AwsError) throw new TaskError("Totals.InputMissing", `s3://${bucket}/${key}: ${err.message}`);
    throw err;
  }
  const summary = { orders: orders.length, total_cents: orders.reduce((sum, order) => sum + order.total_cents, 0) };
  const resultKey = `totals/${key}`;
  await aws.s3Put(bucket, resultKey, JSON.stringify(summary), { contentType: "application/json" });
  const sent = await aws.call("sqs", "AmazonSQS.SendMessage", {
    QueueUrl: queueUrl,
    MessageBody: JSON.stringify({ s3_uri: `s3://${bucket}/${resultKey}`, ...summary }),
  });
  ctx.log("info", `${summary.orders} orders, ${summary.total_cents} cents, announced as ${sent.MessageId}`);
  return { ...summary, result_key: resultKey, message_id: sent.MessageId };
});
