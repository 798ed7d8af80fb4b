from jaxvoice.cli import main

raise SystemExit(main())
