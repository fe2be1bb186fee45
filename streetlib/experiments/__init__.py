"""The study's experiments as notebooks run them (`study`), the headless runner with its profiles (`runner`), and the
generated indexes of results (`report`)."""
