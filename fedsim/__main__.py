from fedsim.app.cli import main

main()
