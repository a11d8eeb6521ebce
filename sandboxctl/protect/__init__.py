"""Protected paths: what a sandbox writes must never run later outside it (SPEC principle 3).

The wall does not rest on a lexical path check or on one bind mount:

- `names`    which entries are protected: git metadata of every repository, start-up files and
             editor/agent config at the root of every writable grant (pure, one line of why each).
- `rules`    a `Protection` built from the plan answers "may the sandbox change this entry?" for
             any path under a writable grant (pure).
- `index`    finds repositories and dotenv files beneath the workspace, fast and repeatedly (a
             walk cached by directory ctime in the private state dir).
- `gitconfig` reads core.hooksPath and include paths from git's config files.
- `snapshot` records what every protected path holds at launch, compares at the end of the
             run, puts back what changed and keeps the changed content aside.

The kernel enforces it: writable host grants are read-only to Landlock, and the supervisor
performs every write, create, rename and delete there itself after asking `rules`
(supervise/mediate.py), on descriptors it resolved, so a path swapped after it was read lands on
a denial.
"""
