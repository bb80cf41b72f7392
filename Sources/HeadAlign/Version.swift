// Version.swift: the one place the version is written.
public let headAlignVersion = "0.1.0"
