from sandboxctl.cli.main import main

main()
