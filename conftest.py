"""pytest settings shared by the unit tests and the chapter notebooks that nbval runs."""

# Seconds nbval waits for each output message of a notebook cell once the cell has finished.
NOTEBOOK_OUTPUT_TIMEOUT_S = 120


def pytest_collection_modifyitems(items):
    """Let nbval wait longer than its fixed 5 s for a finished cell's output messages.

    nbval waits up to --nbval-cell-timeout seconds for a cell to finish, then reads the messages
    that carry its output, giving up when none arrives within `output_timeout` seconds, which it
    fixes at 5 and offers no option for. After a cell that trains two models for two minutes on
    a busy 2-core machine, the kernel has been seen to take longer than that to send them
    (chapter 06 in CI), and the cell failed although it had run correctly.
    """
    for item in items:
        if hasattr(item, "output_timeout"):            # an nbval notebook cell
            item.output_timeout = NOTEBOOK_OUTPUT_TIMEOUT_S
