from moeless_cli.cli.app import main

main()
