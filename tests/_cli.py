"""Running the `ciard-fast` command inside the test process, its output captured."""
import contextlib
import io

from ciard_fast.cli import main


def run_cli(*argv):
    """(exit status, stdout, stderr) of `ciard-fast *argv`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()
