from tunekit.cli import main

raise SystemExit(main())
