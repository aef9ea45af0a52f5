// The published Node.js activity worker (npm step-function-worker, pinned in package.json)
// running the order handler natively: the pricing of guest/examples/js-order, as a plain
// function.
//
//     node node_peer.js --endpoint URL --arn ARN --concurrency 8
//
// Prints "ready" once it polls, then serves until killed.
'use strict';
const StepFunctionWorker = require('step-function-worker');

function argument(name) {
	const index = process.argv.indexOf(`--${name}`);
	if (index < 0 || index + 1 >= process.argv.length) {
		throw new Error(`--${name} is required`);
	}
	return process.argv[index + 1];
}

function price(order) {
	const items = order.items;
	if (!Array.isArray(items) || items.length === 0) {
		throw new Error('items must be a non-empty array');
	}
	let itemCount = 0;
	let subtotal = 0;
	for (const line of items) {
		itemCount += line.quantity;
		subtotal += line.quantity * line.unit_price_cents;
	}
	const discount = Math.floor(subtotal * (order.discount_percent || 0) / 100);
	return {
		order_id: order.order_id,
		lines: items.length,
		item_count: itemCount,
		subtotal_cents: subtotal,
		discount_cents: discount,
		total_cents: subtotal - discount,
		status: 'accepted',
	};
}

const worker = new StepFunctionWorker({
	activityArn: argument('arn'),
	workerName: 'node-peer',
	concurrency: Number(argument('concurrency')),
	awsConfig: {
		endpoint: argument('endpoint'),
		region: 'us-east-1',
		accessKeyId: 'test',
		secretAccessKey: 'test',
		httpOptions: {timeout: 70000},
	},
	logger: {debug() {}, info() {}, warn: console.warn, error: console.error},
	fn(input, callback) {
		try {
			callback(null, price(input));
		} catch (error) {
			callback(error);
		}
	},
});
worker.on('ready', () => console.log('ready'));
