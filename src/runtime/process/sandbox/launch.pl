# Instance launcher (namespaces mode). Runs as root and as PID 1 of the instance's fresh pid, mount,
# uts, ipc (and usually net) namespaces, started by `unshare --fork --kill-child`. Perl (perl-base
# is always there on Debian) because it does every step with plain syscalls in one ~2 ms process;
# the same steps as `mount`/`ip`/`setpriv` commands cost ~25 ms of cold start.
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
#     capabilities and no_new_privs, cwd = the code; 7. stay PID 1, reap, exit with its status
#     (128+n when it died of signal n): PID 1 ignores SIGTERM, and the namespace dies with it.
# Args: ignored (blank padding: see $0 below). stdin, NUL-separated until EOF: the `tasks` files of the 3 cgroups, code dir, uid,
#   tmpfs MiB, lo-up (0|1), syscall numbers "mount,setgroups,setresgid,setresuid,prctl", N, N dirs
#   to hide, argc, argc program args, then the program's environment as K=V records.
# No `use strict; use warnings;` here: loading them costs ~4 ms per start. The unit test checks the
# file with both (perl -Mstrict -Mwarnings -c).

sub fail { print STDERR "aether launcher: $_[0]: $!\n"; exit 125; }
# 1. (blocks here while a spare)
my @in;
{
  local $/;
  my $raw = <STDIN> // '';
  @in = split /\0/, $raw;
}
open(STDIN, '<', '/dev/null') or fail('stdin');
fail('no assignment') unless @in >= 10;
my ($cg1, $cg2, $cg3, $code, $uid, $tmp_mb, $lo, $nrs, $nhide) = splice(@in, 0, 9);
my @hide = splice(@in, 0, $nhide);
my $argc = shift(@in) // 0;
my @argv = splice(@in, 0, $argc);
fail('usage') unless @argv && @argv == $argc;
# Name the code in `ps` (a spare's args are only padding that reserves room for this).
$0 = "$0 $code";
my ($SYS_mount, $SYS_setgroups, $SYS_setresgid, $SYS_setresuid, $SYS_prctl) = map { $_ + 0 } split /,/, $nrs;
$uid += 0;
my ($MS_RDONLY, $MS_NOSUID, $MS_NODEV, $MS_REMOUNT, $MS_BIND) = (1, 2, 4, 32, 4096);
my ($PR_CAPBSET_DROP, $PR_SET_NO_NEW_PRIVS) = (24, 38);
my %env;
for my $kv (@in) {
  my ($k, $v) = split /=/, $kv, 2;
  $env{$k} = $v if defined $v && length $k;
}

# 2. "0" = the writing thread. `tasks`, not `cgroup.procs`: moving one thread skips the kernel's
# global threadgroup lock (an RCU grace period, ~10 ms); perl is single-threaded, so this moves the
# whole process, and everything it forks later starts inside. Checked, so a threaded perl could
# never leave a thread outside the limits.
{
  opendir(my $dh, '/proc/self/task') or fail('open /proc/self/task');
  my @tasks = grep { /^\d+$/ } readdir($dh);
  closedir($dh);
  fail('the launcher is not single-threaded') unless @tasks == 1;
}
for my $f ($cg1, $cg2, $cg3) {
  open(my $fh, '>', $f) or fail("open $f");
  defined(syswrite($fh, '0')) or fail("join cgroup $f");
  close($fh);
}

# 3. + 4. (numbers are passed to syscall() as integers, strings as pointers, 0 as NULL)
sub mnt {
  my ($src, $dst, $type, $flags, $opts) = @_;
  syscall($SYS_mount, $src, $dst, $type, $flags, $opts) == 0 or fail("mount $dst");
}
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

# 5. SIOCGIFFLAGS / SIOCSIFFLAGS on "lo" (struct ifreq: 16-byte name + short flags, 40 bytes)
if ($lo) {
  socket(my $s, 2, 2, 0) or fail('socket');
  my $ifr = pack('a16 s x22', 'lo', 0);
  ioctl($s, 0x8913, $ifr) or fail('get lo flags');
  my $flags = unpack('x16 s', $ifr);
  ioctl($s, 0x8914, pack('a16 s x22', 'lo', $flags | 1)) or fail('set lo up');
  close($s);
}

chdir($target) or fail("chdir $target");

# 6.
my $pid = fork() // fail('fork');
if ($pid == 0) {
  # dropping from the bounding set needs CAP_SETPCAP, so before the uid switch; EINVAL past the last cap
  syscall($SYS_prctl, $PR_CAPBSET_DROP, $_, 0, 0, 0) for 0 .. 63;
  syscall($SYS_setgroups, 0, 0) == 0 or fail('setgroups');
  syscall($SYS_setresgid, $uid, $uid, $uid) == 0 or fail('setresgid');
  syscall($SYS_setresuid, $uid, $uid, $uid) == 0 or fail('setresuid');
  syscall($SYS_prctl, $PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 or fail('no_new_privs');
  %ENV = %env;
  exec { $argv[0] } @argv or fail("exec $argv[0]");
}

# 7.
for (;;) {
  my $w = wait();
  last if $w == -1;
  next if $w != $pid;
  my $st = $?;
  exit(($st & 127) ? 128 + ($st & 127) : $st >> 8);
}
exit 125;
