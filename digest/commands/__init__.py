"""The entry points: the `digest` command line, the web pages behind an email's links
(`digest serve`), the demo and the status report."""
