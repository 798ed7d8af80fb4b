"""One module per subcommand: HELP, add_arguments(parser), run(args). Light imports at the top only."""
