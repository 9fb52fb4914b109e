"""The ground floor every other package stands on: configuration models, errors, shared types, atomic file
writes and child processes. Nothing here imports another flenwheel package."""
