"""How the command lines end: expected errors as one line and exit status 1, a traceback only under --debug.

Kept free of torch / transformers imports so that light commands (the benchmark runner's --dry-run) start fast.
"""

from __future__ import annotations

import sys

from llava.conversation import conv_templates

# Set by the multi-chunk runner (llava.eval.run_benchmark) in its chunk workers' environment to its own PID: a worker
# whose parent changes (the runner died) exits (llava.eval.answering.watch_parent). The fallback for systems
# without prctl(PR_SET_PDEATHSIG), which the runner also sets.
WATCH_PARENT_ENV = "FASTERVLM_WATCH_PARENT"

# Errors a user can fix from the message alone: bad paths, values, templates, a missing optional package.
EXPECTED_ERRORS = (OSError, ValueError, ImportError)


def check_conv_mode(name: str, source: str = "--conv-mode") -> str:
    """`name` if it is a known conversation template, else ValueError listing the known ones."""
    if name not in conv_templates:
        known = ", ".join(sorted(conv_templates))
        raise ValueError(f"{source}: unknown conversation template {name!r}; valid: {known}")
    return name


def run_cli(main_function, argv=None, expected: tuple[type[BaseException], ...] = EXPECTED_ERRORS) -> int:
    """Run `main_function(argv)` as a command: 0 on success; an expected error is printed as one line on stderr
    and gives 1, unless `--debug` is among the arguments (then it propagates with its traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        main_function(argv)
    except expected as err:
        if "--debug" in argv:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0
