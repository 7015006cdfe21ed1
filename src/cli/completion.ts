/**
 * `ciliate completion bash`: a bash completion script made from the command tree itself, so every
 * subcommand and flag a module adds completes without being listed here.
 * @module
 */
import type { Command } from 'commander';

/** Every command path ("", "policy", "policy import", …) with the words that may follow it. */
function completions(command: Command, path: string[] = [], out = new Map<string, string[]>()): Map<string, string[]> {
  const words = [...command.commands.map((c) => c.name()), ...command.options.flatMap((o) => [o.long, o.short].filter((f): f is string => Boolean(f)))];
  out.set(path.join(' '), [...words, '--help']);
  for (const sub of command.commands) completions(sub, [...path, sub.name()], out);
  return out;
}

export function bashCompletion(program: Command): string {
  const cases = [...completions(program)]
    .map(([path, words]) => `    ${JSON.stringify(path)}) words=${JSON.stringify(words.join(' '))} ;;`)
    .join('\n');
  return `# bash completion for ciliate (ciliate completion bash)
_ciliate() {
  local cur path="" w words=""
  cur="\${COMP_WORDS[COMP_CWORD]}"
  # The command path: the words before the cursor that are not flags (flag values are skipped too
  # when they follow a flag, which is good enough for completion).
  for w in "\${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
    case "$w" in -*) ;; *) if [ -z "$path" ]; then path="$w"; else path="$path $w"; fi ;; esac
    case "$path" in
${[...completions(program).keys()].map((p) => `      ${JSON.stringify(p)}) ;;`).join('\n')}
      *) path="\${path% *}" ;;
    esac
  done
  case "$path" in
${cases}
  esac
  COMPREPLY=( $(compgen -W "$words" -- "$cur") )
}
complete -o default -F _ciliate ciliate
`;
}

export function registerCompletionCommand(program: Command): void {
  program
    .command('completion')
    .description('print a shell completion script (bash): source <(ciliate completion bash)')
    .argument('<shell>', 'bash')
    .action((shell: string) => {
      if (shell !== 'bash') throw new Error(`completion: only bash is supported, not ${JSON.stringify(shell)}`);
      process.stdout.write(bashCompletion(program));
    });
}
