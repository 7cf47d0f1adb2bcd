/** A cross-field rule violation, before it is located in a file. */
export interface RuleIssue {
  path: (string | number)[];
  message: string;
  found?: string;
  expected?: string;
  /** Other fields the rule read: when one of them is itself invalid, the rule is not reported. */
  related?: (string | number)[][];
}
