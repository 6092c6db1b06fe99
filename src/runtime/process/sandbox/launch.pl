# Instance launcher (namespaces mode). Runs as root and as PID 1 of the instance's fresh pid, mount,
# uts, ipc (and usually net) namespaces, started by `unshare --fork --kill-child`. Perl (perl-base
# is always there on Debian) because it does every step with plain syscalls in one ~2 ms process;
# the same steps as `mount`/`ip`/`setpriv` commands cost ~25 ms of cold start.
# Nothing ties it to the agent (no parent-death signal, its own session): an instance outlives a
# restarting agent, which adopts it or stops it. Its stdout/stderr (and so the program's) are the
# instance's log FIFOs, held open read-write, so a write never fails for want of a reader.
# It is usually started ahead of need (a warm spare, see process.ts) and blocks on stdin until the
# runtime assigns it an instance, so everything before that read is off the cold-start path.
#  1. read the whole assignment from stdin (below), so root never runs with the user's variables
#     (LD_PRELOAD, ...) and the values never appear on a command line;
#  2. join the instance's cgroups, so everything after (the program and its children) is limited;
#  3. hide the platform's data dir (and other given dirs) and give private /tmp, /var/tmp, /dev/shm
#     and /run (tmpfs; /run also holds host daemons' sockets);
#  4. bind the code dir read-only at /run/aether/code, a neutral path (nothing of the host's layout
#     above it, e.g. no package.json changing how node loads .js), through an fd since 3 may hide it;
#  5. bring loopback up when asked; 6. start the program as an unprivileged uid with no
#     capabilities and no_new_privs, under the seccomp filter (seccomp.ts), cwd = the code;
#  7. stay PID 1, reap, exit with its status
#     (128+n when it died of signal n): PID 1 ignores SIGTERM, and the namespace dies with it.
# Args: ignored (blank padding: see $0 below). stdin, NUL-separated until EOF: the `tasks` files of the 3 cgroups, code dir, uid,
#   tmpfs MiB, lo-up (0|1), syscall numbers "mount,setgroups,setresgid,setresuid,prctl", the seccomp
#   filter (hex of its struct sock_filter array), N, N dirs to hide, argc, argc program args, then
#   the program's environment as K=V records.
# No `use strict; use warnings;` here: loading them costs ~4 ms per start. The unit test checks the
# file with both (perl -Mstrict -Mwarnings -c). The steps it shares with container.pl are in common.pl.

# common.pl lies beside this file (a relative path needs ./ or require searches @INC instead)
BEGIN { my $d = __FILE__ =~ m{^(.*)/} ? $1 : '.'; require($d =~ m{^/} ? "$d/common.pl" : "./$d/common.pl"); }
our $WHO;
$WHO = 'aether launcher';
# 1. (blocks here while a spare)
my @in = read_assignment();
fail('no assignment') unless @in >= 11;
my ($cg1, $cg2, $cg3, $code, $uid, $tmp_mb, $lo, $nrs, $filter, $nhide) = splice(@in, 0, 10);
my @hide = splice(@in, 0, $nhide);
my $argc = shift(@in) // 0;
my @argv = splice(@in, 0, $argc);
fail('usage') unless @argv && @argv == $argc;
# Name the code in `ps` (a spare's args are only padding that reserves room for this).
$0 = "$0 $code";
syscall_numbers($nrs);
$uid += 0;
my ($MS_RDONLY, $MS_NOSUID, $MS_NODEV, $MS_REMOUNT, $MS_BIND) = (1, 2, 4, 32, 4096);
my $fprog = seccomp_prog($filter);
my $env = env_of(@in);

# 2. (common.pl: `tasks` of the single thread)
join_cgroups($cg1, $cg2, $cg3);

# 3. + 4.
sysopen(my $codefh, $code, 0) or fail("open $code");
# The interpreter may live under a dir about to be hidden (a checkout in /tmp brings its own node):
# hold its directory now and bind it back read-only after the tmpfs mounts.
my ($bindir) = $argv[0] =~ m{^(/.+)/[^/]+$};
my $binfh;
undef $binfh unless defined $bindir && sysopen($binfh, $bindir, 0);
my $nosd = $MS_NOSUID | $MS_NODEV;
mnt('aether-hidden', $_, 'tmpfs', $nosd, 'mode=0755,size=1m') for @hide;
mnt('aether-tmp', '/tmp', 'tmpfs', $nosd, "mode=1777,size=${tmp_mb}m");
mnt('aether-tmp', '/var/tmp', 'tmpfs', $nosd, "mode=1777,size=${tmp_mb}m") if -d '/var/tmp';
mnt('aether-shm', '/dev/shm', 'tmpfs', $nosd, "mode=1777,size=${tmp_mb}m") if -d '/dev/shm';
mnt('aether-run', '/run', 'tmpfs', $nosd, 'mode=0755,size=1m');
if ($binfh && !-e $argv[0]) {
  my $p = '';
  for my $part (grep { length } split m{/}, $bindir) { $p .= "/$part"; mkdir $p; }
  mnt('/proc/self/fd/' . fileno($binfh), $bindir, 0, $MS_BIND, 0);
  mnt(0, $bindir, 0, $MS_BIND | $MS_REMOUNT | $MS_RDONLY | $nosd, 0);
}
close($binfh) if $binfh;
my $target = '/run/aether/code';
mkdir '/run/aether' or fail('mkdir /run/aether');
mkdir $target or fail("mkdir $target");
mnt('/proc/self/fd/' . fileno($codefh), $target, 0, $MS_BIND, 0);
mnt(0, $target, 0, $MS_BIND | $MS_REMOUNT | $MS_RDONLY | $nosd, 0);
close($codefh);

# 5.
lo_up() if $lo;

chdir($target) or fail("chdir $target");

# 6. + 7. (the program inherits the cwd: the code)
run_program($uid, $uid, undef, $fprog, $env, @argv);
