namespace OrtFinetune.Distributed;

/// <summary>
/// A failure of the distributed layer: the MPI library could not be loaded, an MPI call returned an
/// error code, or a request cannot be served (an unsupported element type). Messages name the call and,
/// for MPI errors, the code and the library's text for it.
/// </summary>
public sealed class DistributedException : Exception
{
    /// <summary>The MPI call that failed (<c>MPI_Allreduce</c>), or null when no MPI call is involved.</summary>
    public string? Call { get; }

    /// <summary>The MPI error code the call returned, or null when no MPI call is involved.</summary>
    public int? ErrorCode { get; }

    public DistributedException(string message) : base(message) { }

    public DistributedException(string message, Exception inner) : base(message, inner) { }

    public DistributedException(string call, int errorCode, string message) : base(message)
    {
        Call = call;
        ErrorCode = errorCode;
    }
}
