import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The package root: compiled files live in dist/src/, two levels below it. */
export const PACKAGE_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const VERSION: string = (JSON.parse(readFileSync(`${PACKAGE_ROOT}package.json`, 'utf8')) as { version: string }).version;
