using System.Diagnostics;
using System.Runtime.InteropServices;
using OrtFinetune.Distributed;
using OrtFinetune.Host.Configuration;

namespace OrtFinetune.Host.Training;

/// <summary>
/// <c>train --devices N [--num-nodes M --hostfile F]</c> outside an MPI job: starts the N x M ranks through Open MPI's
/// mpirun, each running this same command (a rank recognises itself from mpirun's environment), and waits for them.
/// SIGINT/SIGTERM to this launcher become SIGUSR1 to mpirun, which forwards it to every rank: the ranks agree on
/// a step to stop at, rank 0 writes one checkpoint and all exit with 130. (SIGTERM to mpirun itself kills the ranks
/// about a second later, too soon for a checkpoint of a large model.) mpirun runs in a session of its own, so a
/// terminal's Ctrl-C reaches only the launcher. A rank that dies makes mpirun end the others; the launcher then
/// exits with mpirun's code and says so.
/// </summary>
public static class DataParallelLaunch
{
    const int SigUsr1 = 10, SigTerm = 15;

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    public static int Run(TrainSettings s, IReadOnlyList<string> commandLine)
    {
        int ranks = s.Devices * s.NumNodes;
        var mpirun = MpiLauncher.FindMpirun();
        if (mpirun == null)
        {
            Console.Error.WriteLine($"error: --devices {s.Devices}{(s.NumNodes > 1 ? $" --num-nodes {s.NumNodes}" : "")} needs {ranks} processes started by MPI, and no mpirun was found on PATH. {MpiLauncher.MissingMessage}");
            return ExitCodes.Usage;
        }
        var self = HostSetup.SelfProcess(commandLine);
        var args = new List<string>();
        if (File.Exists("/usr/bin/setsid")) args.Add(mpirun);
        args.AddRange(MpiLauncher.Arguments(ranks, s.Hostfile));
        if (s.NumNodes > 1) args.AddRange(["--map-by", $"ppr:{s.Devices}:node"]);   // --devices ranks on each node of the hostfile
        args.Add(self.FileName);
        args.AddRange(self.ArgumentList);
        var psi = new ProcessStartInfo(File.Exists("/usr/bin/setsid") ? "/usr/bin/setsid" : mpirun, args) { UseShellExecute = false };
        Console.Error.WriteLine($"starting {ranks} ranks: {psi.FileName} {string.Join(' ', args)}");

        using var p = Process.Start(psi) ?? throw new InvalidOperationException("mpirun did not start");
        int signals = 0;
        void Forward(PosixSignalContext ctx)
        {
            ctx.Cancel = true;   // the launcher lives until mpirun ends
            // First signal: a clean stop (checkpoint, exit 130). A second one: stop now.
            if (Interlocked.Increment(ref signals) == 1)
            {
                Console.Error.WriteLine($"{ctx.Signal}: asking the {ranks} ranks to stop at the next step (again to stop at once)");
                kill(p.Id, SigUsr1);
            }
            else kill(p.Id, SigTerm);
        }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Forward);
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, Forward);
        p.WaitForExit();
        int code = p.ExitCode;
        if (code is not (ExitCodes.Ok or ExitCodes.Interrupted))
            Console.Error.WriteLine($"error: the data-parallel run failed: mpirun exited with code {code} (a rank failed or was killed; its message is above)");
        return code;
    }
}
