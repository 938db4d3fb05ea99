/** What a caught value says, for logs and replies: a rejection or a throw need not be an Error. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The errno code ('ENOENT', 'EBUSY', ...) of a caught system error, undefined for anything else. */
export function errnoCode(e: unknown): string | undefined {
  return e instanceof Error && 'code' in e && typeof e.code === 'string' ? e.code : undefined;
}
