// Parse an AsyncAPI document (fetched from a URL) with @asyncapi/parser and print its
// diagnostics as JSON: [{severity, code, path, message}], severity 0 error, 1 warning, 2 info,
// 3 hint. Exits 1 when there is an error or the document did not parse at all.
import { Parser } from '@asyncapi/parser';

const url = process.argv[2];
const response = await fetch(url);
if (!response.ok) {
  console.error(`${url}: HTTP ${response.status}`);
  process.exit(2);
}
const { document, diagnostics } = await new Parser().parse(await response.text());
const found = diagnostics.map((d) => ({
  severity: d.severity,
  code: d.code,
  path: d.path.join('.'),
  message: d.message,
}));
console.log(JSON.stringify(found, null, 2));
process.exit(document === undefined || found.some((d) => d.severity === 0) ? 1 : 0);
