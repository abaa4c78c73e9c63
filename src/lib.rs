//! Process assembly for the `edgemesh` binaries: which modules run in which process.
