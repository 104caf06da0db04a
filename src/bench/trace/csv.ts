/**
 * The dataset's CSV: comma-separated, a header line, no quoting. Tolerates \r\n and blank
 * lines (trailing or not); a row with the wrong number of fields is an error naming the file
 * and the line.
 */
export class TraceFormatError extends Error {
  constructor(
    readonly file: string,
    readonly line: number,
    message: string,
  ) {
    super(`${file}:${line}: ${message}`);
    this.name = "TraceFormatError";
  }
}

export interface CsvRow {
  /** 1-based line number in the file. */
  line: number;
  fields: string[];
}

export interface Csv {
  header: string[];
  rows: CsvRow[];
}

/** Splits `text` (the contents of `file`, named in errors) into its header and rows. */
export function parseCsv(text: string, file: string): Csv {
  const lines = text.split("\n");
  let header: string[] | undefined;
  const rows: CsvRow[] = [];
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i] ?? "";
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (line.trim() === "") continue;
    const fields = line.split(",").map((f) => f.trim());
    if (!header) {
      header = fields;
      continue;
    }
    if (fields.length !== header.length) throw new TraceFormatError(file, i + 1, `expected ${header.length} fields as in the header, got ${fields.length}`);
    rows.push({ line: i + 1, fields });
  }
  if (!header) throw new TraceFormatError(file, 1, "empty file (no header line)");
  return { header, rows };
}

/** A number field of a row; an error naming file, line and column when it is not one. */
export function numberAt(csv: Csv, row: CsvRow, column: number, file: string): number {
  const text = row.fields[column] ?? "";
  const n = Number(text);
  if (text === "" || !Number.isFinite(n)) throw new TraceFormatError(file, row.line, `${csv.header[column] ?? `column ${column + 1}`} is not a number: ${JSON.stringify(text)}`);
  return n;
}

/** Checks that the header starts with `expected` (case-sensitive, as the dataset writes it). */
export function expectHeader(csv: Csv, expected: readonly string[], file: string): void {
  for (let i = 0; i < expected.length; i++) {
    if (csv.header[i] !== expected[i]) throw new TraceFormatError(file, 1, `header column ${i + 1} should be ${expected[i]}, got ${JSON.stringify(csv.header[i] ?? "")}`);
  }
}
