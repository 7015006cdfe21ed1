#!/usr/bin/env node
/**
 * Entry point the container runtime executes (through the wrapper `ciliate cni install` writes).
 * @module
 */
import { runCni } from './plugin.ts';

const chunks: Buffer[] = [];
for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
const { stdout, exitCode } = await runCni(process.env, Buffer.concat(chunks).toString('utf8'));
if (stdout) process.stdout.write(`${stdout}\n`);
process.exitCode = exitCode;
