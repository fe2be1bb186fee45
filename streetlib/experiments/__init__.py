"""The study's experiments as notebooks run them (`study`), the headless runner with its profiles (`runner`), what a
run would cost before it starts (`planning`), and the generated indexes of results (`report`)."""
