from crpe.cli import main

main()
