/** A cross-field rule violation, before it is located in a file. */
export interface RuleIssue {
  path: (string | number)[];
  message: string;
  found?: string;
  expected?: string;
}
