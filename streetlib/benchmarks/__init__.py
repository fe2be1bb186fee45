"""`streetlib bench`: side-by-side benchmarks against reference implementations. Only the command line imports this
package (an import-linter contract), so the library never loads it."""
