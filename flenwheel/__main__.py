from flenwheel.cli import main

main()
