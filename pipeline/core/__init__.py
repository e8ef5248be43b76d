"""What every stage shares: params, the file layout, file writes, logs, errors, stack shims."""
