from provisor.cli import main

main()
