// Example guest in JavaScript for an activity with `instance_reuse` over 1: a price lookup
// in a catalogue that is expensive to build, built on the first task an instance runs and
// kept in a module variable for the later tasks of that instance (as a Lambda function keeps
// what its module caches). With a fresh instance per task (the default) every task builds it.
//
// Input: {"sku": "SKU-123", "quantity": N}. Output: {"sku", "unit_price", "total",
// "catalogue": "built" or "cached", "tasks_served": tasks this instance has run}.
// An unknown SKU fails the task with `Catalogue.UnknownSku`.
import { handler, TaskError } from "../../kits/js/sfn-activity.js";

const CATALOGUE_SIZE = 20000;

// Module variables: what survives between the tasks of one warm instance.
let catalogue = null;
let tasksServed = 0;

/** Prices in cents for SKU-0 ... SKU-19999, derived from a hash (FNV-1a) of each name. */
function buildCatalogue() {
  const prices = new Map();
  for (let number = 0; number < CATALOGUE_SIZE; number++) {
    const sku = `SKU-${number}`;
    let hash = 0x811c9dc5;
    for (let i = 0; i < sku.length; i++) hash = Math.imul(hash ^ sku.charCodeAt(i), 0x01000193) >>> 0;
    prices.set(sku, 100 + (hash % 9900));
  }
  return prices;
}

export const handle = handler((task) => {
  tasksServed += 1;
  let state = "cached";
  if (catalogue === null) {
    catalogue = buildCatalogue();
    state = "built";
  }
  const sku = task?.sku;
  if (!catalogue.has(sku)) throw new TaskError("Catalogue.UnknownSku", `no such SKU: ${JSON.stringify(sku)}`);
  const quantity = Number(task?.quantity ?? 1);
  const unit = catalogue.get(sku);
  return { sku, unit_price: unit / 100, total: (unit * quantity) / 100, catalogue: state, tasks_served: tasksServed };
});
