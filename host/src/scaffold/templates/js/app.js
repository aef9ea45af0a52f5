// {{name}}: a sfn-wasm-worker task handler in JavaScript (see README.md).
import { config, handler, TaskError } from "./sfn-activity.js";

export const handle = handler(async (task, ctx) => {
  const name = task?.name;
  if (typeof name !== "string" || name === "") {
    throw new TaskError("Greeting.InvalidInput", "`name` must be a non-empty string");
  }
  ctx.log("info", `greeting ${name}`);
  // A value of the activity's [activity.config] (or `invoke --config-value greeting=hi`).
  const greeting = config("greeting", "hello");
  return { greeting: `${greeting}, ${name}`, task_id: ctx.taskId };
});
