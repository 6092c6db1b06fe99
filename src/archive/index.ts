export {
  type ArchiveKind,
  type ArchiveLimits,
  type ExtractResult,
  DEFAULT_LIMITS,
  detectArchive,
  extractArchive,
  validateArchive,
  normalizeEntryName,
  resolvesInside,
} from './archive.ts';
