/** The npm package ships no types: what the tests use of it. */
declare module 'parse-prometheus-text-format' {
  interface ParsedMetricFamily {
    name: string;
    help: string;
    type: 'GAUGE' | 'COUNTER' | 'SUMMARY' | 'HISTOGRAM' | 'UNTYPED';
    metrics: Array<{ value: string; labels?: Record<string, string> }>;
  }
  function parsePrometheusTextFormat(text: string): ParsedMetricFamily[];
  export = parsePrometheusTextFormat;
}
