/** What a caught value says, for logs and replies: a rejection or a throw need not be an Error. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
