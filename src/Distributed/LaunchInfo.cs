using System.Globalization;

namespace OrtFinetune.Distributed;

/// <summary>
/// What the launcher told this process through its environment: its rank among <see cref="Size"/>
/// ranks, its rank on this node when known, and which launcher (<see cref="Source"/>) said so.
/// Reading it never loads MPI.
/// </summary>
public sealed record LaunchInfo(int Rank, int Size, int? LocalRank, string Source)
{
    /// <summary>
    /// The launch as the environment describes it, or null when no launcher variables are set. Looks at
    /// <c>OMPI_COMM_WORLD_RANK</c>/<c>OMPI_COMM_WORLD_SIZE</c> (Open MPI's mpirun), then
    /// <c>PMI_RANK</c>/<c>PMI_SIZE</c> (MPICH's Hydra, srun with PMI-1/2), then <c>PMIX_RANK</c>
    /// with Slurm's task count (srun --mpi=pmix). A size of 1 is returned as is (the caller decides).
    /// </summary>
    /// <exception cref="DistributedException">A launcher variable is not a number, or the rank is out of range.</exception>
    public static LaunchInfo? FromEnvironment() => FromEnvironment(Environment.GetEnvironmentVariable);

    internal static LaunchInfo? FromEnvironment(Func<string, string?> env)
    {
        (string Rank, string[] Sizes, string Source)[] launchers =
        [
            ("OMPI_COMM_WORLD_RANK", ["OMPI_COMM_WORLD_SIZE"], "Open MPI"),
            ("PMI_RANK", ["PMI_SIZE"], "PMI"),
            ("PMIX_RANK", ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"], "PMIx"),
        ];
        foreach (var (rankVar, sizeVars, source) in launchers)
        {
            var sizeVar = sizeVars.FirstOrDefault(v => !string.IsNullOrEmpty(env(v)));
            if (string.IsNullOrEmpty(env(rankVar)) || sizeVar == null) continue;
            int rank = Parse(env, rankVar), size = Parse(env, sizeVar);
            if (size < 1 || rank < 0 || rank >= size)
                throw new DistributedException($"The launch environment is inconsistent: {rankVar}={rank}, {sizeVar}={size}.");
            int? local = null;
            foreach (var localVar in (string[])["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID"])
                if (!string.IsNullOrEmpty(env(localVar))) { local = Parse(env, localVar); break; }
            return new LaunchInfo(rank, size, local, source);
        }
        return null;
    }

    static int Parse(Func<string, string?> env, string name) =>
        int.TryParse(env(name), NumberStyles.None, CultureInfo.InvariantCulture, out var v)
            ? v
            : throw new DistributedException($"The launch environment variable {name}='{env(name)}' is not a rank count or index.");
}
