from kit.cli.app import main

main()
