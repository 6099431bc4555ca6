from boundflow.cli import main

raise SystemExit(main())
